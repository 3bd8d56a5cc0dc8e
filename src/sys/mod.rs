#![allow(unsafe_code)]
//! TODO
