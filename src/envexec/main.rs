//! `ferrio-envexec`: the first program of a container whose env holds a value that is not
//! UTF-8. The OCI config is JSON and cannot carry such bytes (crun refuses the file, runc
//! replaces them with U+FFFD), so the spec carries them hex-encoded in one variable
//! ([`codec::VAR`]) and runs this helper in front of the real args. It puts the decoded
//! entries where that variable stood, drops the variable, and execs its arguments the way
//! the runtime would have: argv exactly as given, a name without `/` looked up in the
//! container's `PATH`. Nothing else changes (cwd, user, capabilities, fds are inherited).
//!
//! It runs inside containers whatever their libc, so it is linked statically (build.rs),
//! with std and nothing else.

// The spec step encodes; this side only decodes.
#[allow(dead_code)]
mod codec;

use std::ffi::CString;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;

extern "C" {
    static environ: *const *const c_char;
    fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char)
        -> c_int;
}

/// The shell's and runc's exit statuses for a command that cannot run.
const NOT_FOUND: i32 = 127;
const CANNOT_EXECUTE: i32 = 126;

fn main() {
    let args: Vec<CString> = std::env::args_os()
        .skip(1)
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let Some(name) = args.first().map(|a| a.as_bytes().to_vec()) else {
        fail(NOT_FOUND, "no command to run");
    };
    let env = environment();
    let mut argv: Vec<*const c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());

    let shown = String::from_utf8_lossy(&name).into_owned();
    if name.contains(&b'/') {
        let err = exec(&name, &argv, &envp);
        fail(status_of(&err), &format!("exec: {shown:?}: {err}"));
    }
    let path = env
        .iter()
        .find_map(|e| e.as_bytes().strip_prefix(b"PATH="))
        .unwrap_or(b"");
    let mut denied: Option<std::io::Error> = None;
    for dir in path.split(|&c| c == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut candidate = dir.to_vec();
        candidate.push(b'/');
        candidate.extend_from_slice(&name);
        let err = exec(&candidate, &argv, &envp);
        match err.raw_os_error() {
            // Not there (or not a program there): try the next directory, as execvp does.
            Some(errno) if is_missing(errno) => continue,
            Some(EACCES) => denied = Some(err),
            _ => fail(status_of(&err), &format!("exec: {shown:?}: {err}")),
        }
    }
    match denied {
        Some(err) => fail(CANNOT_EXECUTE, &format!("exec: {shown:?}: {err}")),
        None => fail(
            NOT_FOUND,
            &format!("exec: {shown:?}: executable file not found in $PATH"),
        ),
    }
}

const ENOENT: i32 = 2;
const EACCES: i32 = 13;
const ENOTDIR: i32 = 20;
const ENODEV: i32 = 19;
const ESTALE: i32 = 116;
const ETIMEDOUT: i32 = 110;

fn is_missing(errno: i32) -> bool {
    matches!(errno, ENOENT | ENOTDIR | ENODEV | ESTALE | ETIMEDOUT)
}

fn status_of(err: &std::io::Error) -> i32 {
    match err.raw_os_error() {
        Some(e) if is_missing(e) => NOT_FOUND,
        _ => CANNOT_EXECUTE,
    }
}

/// The environment the runtime gave us, in its order, with [`codec::VAR`] replaced by the
/// entries it carries.
fn environment() -> Vec<CString> {
    let mut out = Vec::new();
    let prefix = format!("{}=", codec::VAR);
    // SAFETY: `environ` is the NUL-terminated array of NUL-terminated strings the kernel
    // handed to this process; nothing here changes the environment while it is read.
    unsafe {
        let mut p = environ;
        while !p.is_null() && !(*p).is_null() {
            let entry = std::ffi::CStr::from_ptr(*p);
            match entry.to_bytes().strip_prefix(prefix.as_bytes()) {
                Some(encoded) => match codec::decode(encoded) {
                    Some(entries) => {
                        out.extend(entries.into_iter().filter_map(|e| CString::new(e).ok()))
                    }
                    None => fail(CANNOT_EXECUTE, &format!("{} is not valid", codec::VAR)),
                },
                None => out.push(entry.to_owned()),
            }
            p = p.add(1);
        }
    }
    out
}

/// Returns only when the exec failed, with its error.
fn exec(path: &[u8], argv: &[*const c_char], envp: &[*const c_char]) -> std::io::Error {
    let Ok(path) = CString::new(path) else {
        return std::io::Error::from_raw_os_error(ENOENT);
    };
    // SAFETY: `path` is NUL-terminated, `argv` and `envp` are NULL-terminated arrays of
    // pointers into CStrings that outlive the call.
    unsafe { execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    std::io::Error::last_os_error()
}

fn fail(status: i32, message: &str) -> ! {
    eprintln!("ferrio-envexec: {message}");
    std::process::exit(status)
}
