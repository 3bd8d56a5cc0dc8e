//! The spec room's tests: the two entry points end to end (the assertions the translators had
//! before they became steps), and the steps alone against a fake host.

mod container;
mod pod;
mod steps;
