//! The CRI log format that kubelet reads (`kubectl logs`):
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <text>\n`.
//!
//! `F` ends a line; `P` is one piece of a line that goes on in the next record of the same stream.
//! Partial data is kept per stream until its newline arrives, so a line that the container wrote in
//! several small writes still becomes one `F` record; a line longer than [`MAX_LINE`] is cut into
//! `P` records so that the monitor's memory stays bounded; text that waited too long for its
//! newline (a prompt, see [`CriLog::flush_stale`]) or is left at EOF becomes a `P` record.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The longest text one record carries (conmon uses a similar bound).
pub const MAX_LINE: usize = 16 * 1024;

/// Which of the container's output streams a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static [u8] {
        match self {
            Stream::Stdout => b"stdout",
            Stream::Stderr => b"stderr",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The RFC 3339 timestamp with nine fraction digits and an explicit offset, as CRI logs use.
pub fn timestamp(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Nanos, false)
}

/// Splits two output streams into CRI log records and appends them to a sink.
pub struct CriLog<W: Write = File> {
    /// `None` discards the output (no log path was configured, or the file could not be opened).
    sink: Option<W>,
    /// Where the sink was opened, so that it can be reopened after kubelet rotated the file.
    path: Option<PathBuf>,
    /// Text of the current, unfinished line of each stream.
    partial: [Vec<u8>; 2],
    /// Since when each stream's partial text has waited for its newline.
    partial_since: [Option<Instant>; 2],
    /// Scratch buffer for one record, reused so that writing a record does not allocate.
    record: Vec<u8>,
}

/// Opens (creating if needed) a CRI log file for appending.
pub fn open_log_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl CriLog<File> {
    /// A log appending to the file at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open_log_file(path)?;
        let mut log = CriLog::new(Some(file));
        log.path = Some(path.to_path_buf());
        Ok(log)
    }

    /// Opens the log path again (kubelet renamed the old file away); output goes to the new file
    /// from the next record on. Unfinished lines are kept and continue in the new file.
    pub fn reopen(&mut self) -> io::Result<()> {
        if let Some(path) = &self.path {
            self.sink = Some(open_log_file(path)?);
        }
        Ok(())
    }
}

impl<W: Write> CriLog<W> {
    /// A log writing to `sink`, or discarding everything when `sink` is `None`.
    pub fn new(sink: Option<W>) -> Self {
        CriLog {
            sink,
            path: None,
            partial: [Vec::new(), Vec::new()],
            partial_since: [None, None],
            record: Vec::new(),
        }
    }

    /// The sink, for tests and for flushing.
    pub fn sink_mut(&mut self) -> Option<&mut W> {
        self.sink.as_mut()
    }

    /// Feeds bytes read from `stream`; complete lines are written at once, the rest is kept.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> io::Result<()> {
        if self.sink.is_none() {
            return Ok(());
        }
        let i = stream.index();
        let mut result = Ok(());
        while !data.is_empty() {
            let room = MAX_LINE - self.partial[i].len();
            let newline = data.iter().take(room + 1).position(|b| *b == b'\n');
            let r = if let Some(n) = newline {
                let r = if self.partial[i].is_empty() {
                    self.emit(stream, b'F', Some(&data[..n]))
                } else {
                    self.partial[i].extend_from_slice(&data[..n]);
                    self.emit(stream, b'F', None)
                };
                data = &data[n + 1..];
                r
            } else if data.len() > room {
                self.partial[i].extend_from_slice(&data[..room]);
                data = &data[room..];
                self.emit(stream, b'P', None)
            } else {
                self.partial[i].extend_from_slice(data);
                if self.partial_since[i].is_none() {
                    self.partial_since[i] = Some(Instant::now());
                }
                break;
            };
            // Keep going after a failed write: the pipe must be drained or the container blocks.
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// Writes out the unfinished line of `stream`, if any, as a `P` record (at EOF, or when the
    /// line has waited long enough for its end).
    pub fn flush_partial(&mut self, stream: Stream) -> io::Result<()> {
        if self.partial[stream.index()].is_empty() {
            return Ok(());
        }
        self.emit(stream, b'P', None)
    }

    /// Writes out, as `P` records, partial lines that have waited `max_age` or longer for their
    /// newline (a prompt without one must still reach `kubectl logs -f`). Returns how long until
    /// the next remaining partial line is due, if any.
    pub fn flush_stale(&mut self, max_age: Duration) -> Option<Duration> {
        let mut next: Option<Duration> = None;
        for stream in [Stream::Stdout, Stream::Stderr] {
            let Some(since) = self.partial_since[stream.index()] else {
                continue;
            };
            let age = since.elapsed();
            if age >= max_age {
                let _ = self.flush_partial(stream);
            } else {
                let due = max_age - age;
                next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        next
    }

    /// Whether `stream` has text waiting for its newline.
    pub fn has_partial(&self, stream: Stream) -> bool {
        !self.partial[stream.index()].is_empty()
    }

    /// Writes one record whose text is `text`, or the stream's partial buffer (then cleared).
    fn emit(&mut self, stream: Stream, tag: u8, text: Option<&[u8]>) -> io::Result<()> {
        let i = stream.index();
        let body: &[u8] = match text {
            Some(t) => t,
            None => &self.partial[i],
        };
        self.record.clear();
        self.record
            .extend_from_slice(timestamp(SystemTime::now()).as_bytes());
        self.record.push(b' ');
        self.record.extend_from_slice(stream.name());
        self.record.push(b' ');
        self.record.push(tag);
        self.record.push(b' ');
        self.record.extend_from_slice(body);
        self.record.push(b'\n');
        if text.is_none() {
            self.partial[i].clear();
            self.partial_since[i] = None;
        }
        // Drop buffers that a very long line grew, so an idle monitor stays small.
        if self.partial[i].capacity() > MAX_LINE {
            self.partial[i].shrink_to(0);
        }
        let result = match self.sink.as_mut() {
            // One write(2) per record on an O_APPEND file keeps records whole for readers.
            Some(sink) => sink.write_all(&self.record),
            None => Ok(()),
        };
        if self.record.capacity() > 2 * MAX_LINE {
            self.record = Vec::new();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed record: (timestamp, stream, tag, text).
    fn parse(out: &[u8]) -> Vec<(String, String, String, Vec<u8>)> {
        let mut v = Vec::new();
        let text = out;
        assert_eq!(text.last(), Some(&b'\n'), "output ends with a newline");
        for rec in text[..text.len() - 1].split(|b| *b == b'\n') {
            let mut parts = rec.splitn(4, |b| *b == b' ');
            let ts = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let stream = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let tag = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
            let body = parts.next().unwrap().to_vec();
            v.push((ts, stream, tag, body));
        }
        v
    }

    fn check_timestamp(ts: &str) {
        // 2024-01-02T03:04:05.123456789+00:00
        let parsed = chrono::DateTime::parse_from_rfc3339(ts).expect("rfc3339");
        let frac = ts.split('.').nth(1).unwrap();
        assert_eq!(
            frac.len(),
            9 + "+00:00".len(),
            "nine fraction digits and offset: {ts}"
        );
        assert!(frac[..9].bytes().all(|b| b.is_ascii_digit()));
        let age = chrono::Utc::now().signed_duration_since(parsed);
        assert!(age.num_seconds().abs() < 60, "timestamp is now: {ts}");
    }

    #[test]
    fn lines_of_both_streams_become_f_records() {
        let mut log = CriLog::new(Some(Vec::new()));
        log.write(Stream::Stdout, b"hello\nwor").unwrap();
        log.write(Stream::Stderr, b"oops\n").unwrap();
        log.write(Stream::Stdout, b"ld\n\n").unwrap();
        let recs = parse(log.sink_mut().unwrap());
        let got: Vec<_> = recs
            .iter()
            .map(|(_, s, t, b)| (s.as_str(), t.as_str(), b.as_slice()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("stdout", "F", &b"hello"[..]),
                ("stderr", "F", &b"oops"[..]),
                ("stdout", "F", &b"world"[..]),
                ("stdout", "F", &b""[..]),
            ]
        );
        for (ts, ..) in &recs {
            check_timestamp(ts);
        }
    }

    #[test]
    fn long_lines_are_split_into_p_records() {
        let mut log = CriLog::new(Some(Vec::new()));
        let line: Vec<u8> = (0..(2 * MAX_LINE + 10))
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        // Feed in odd-sized chunks to cross the buffer boundary in every way.
        let mut data = line.clone();
        data.push(b'\n');
        for chunk in data.chunks(3001) {
            log.write(Stream::Stdout, chunk).unwrap();
        }
        let recs = parse(log.sink_mut().unwrap());
        let tags: Vec<_> = recs.iter().map(|r| (r.2.as_str(), r.3.len())).collect();
        assert_eq!(tags, vec![("P", MAX_LINE), ("P", MAX_LINE), ("F", 10)]);
        let joined: Vec<u8> = recs.iter().flat_map(|r| r.3.clone()).collect();
        assert_eq!(joined, line);
    }

    #[test]
    fn a_line_of_exactly_max_is_one_f_record() {
        let mut log = CriLog::new(Some(Vec::new()));
        let mut data = vec![b'x'; MAX_LINE];
        data.push(b'\n');
        log.write(Stream::Stderr, &data).unwrap();
        let recs = parse(log.sink_mut().unwrap());
        assert_eq!(recs.len(), 1);
        assert_eq!((recs[0].2.as_str(), recs[0].3.len()), ("F", MAX_LINE));
    }

    #[test]
    fn output_without_newline_is_a_p_record_at_eof() {
        let mut log = CriLog::new(Some(Vec::new()));
        log.write(Stream::Stdout, b"done\nno newline").unwrap();
        assert!(log.has_partial(Stream::Stdout));
        log.flush_partial(Stream::Stdout).unwrap();
        log.flush_partial(Stream::Stderr).unwrap();
        let recs = parse(log.sink_mut().unwrap());
        assert_eq!(recs.len(), 2);
        assert_eq!(
            (recs[1].2.as_str(), recs[1].3.as_slice()),
            ("P", &b"no newline"[..])
        );
        assert!(!log.has_partial(Stream::Stdout));
    }

    #[test]
    fn stale_partial_lines_are_flushed_fresh_ones_kept() {
        let mut log = CriLog::new(Some(Vec::new()));
        log.write(Stream::Stdout, b"prompt> ").unwrap();
        let due = log
            .flush_stale(Duration::from_secs(60))
            .expect("a partial line is pending");
        assert!(due <= Duration::from_secs(60));
        assert!(log.sink_mut().unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(log.flush_stale(Duration::from_millis(1)), None);
        log.write(Stream::Stdout, b"answer\n").unwrap();
        let recs = parse(log.sink_mut().unwrap());
        let got: Vec<_> = recs
            .iter()
            .map(|r| (r.2.as_str(), r.3.as_slice()))
            .collect();
        assert_eq!(got, vec![("P", &b"prompt> "[..]), ("F", &b"answer"[..])]);
        assert_eq!(log.flush_stale(Duration::from_millis(1)), None);
    }

    #[test]
    fn no_sink_discards() {
        let mut log: CriLog<Vec<u8>> = CriLog::new(None);
        log.write(Stream::Stdout, b"abc").unwrap();
        assert!(!log.has_partial(Stream::Stdout));
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut log = CriLog::open(&path).unwrap();
        log.write(Stream::Stdout, b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
        log.write(Stream::Stdout, b"two\n").unwrap();
        log.reopen().unwrap();
        log.write(Stream::Stdout, b"three\n").unwrap();
        let old = std::fs::read(dir.path().join("0.log.1")).unwrap();
        let new = std::fs::read(&path).unwrap();
        assert_eq!(parse(&old).len(), 2);
        let recs = parse(&new);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].3, b"three");
    }
}
