//! How the env entries a JSON string cannot carry travel to `ferrio-envexec`: each whole
//! `KEY=VALUE` entry as lowercase hex, entries joined by `:` (never a hex digit), in one
//! variable. Shared by the spec step that encodes and the helper that decodes, which is built
//! with std alone, so this file uses nothing else.

/// The variable that carries the encoded entries; the helper removes it before the exec.
pub const VAR: &str = "FERRIO_ENVEXEC_ENV";

/// `entries` (each a whole `KEY=VALUE`) as the value of [`VAR`].
pub fn encode(entries: &[Vec<u8>]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::new();
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        for b in entry {
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        }
    }
    out
}

/// The entries [`encode`] wrote; `None` when `value` is not its output.
pub fn decode(value: &[u8]) -> Option<Vec<Vec<u8>>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if value.is_empty() {
        return Some(Vec::new());
    }
    value
        .split(|&c| c == b':')
        .map(|hex| {
            if hex.len() % 2 != 0 {
                return None;
            }
            hex.chunks(2)
                .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
                .collect()
        })
        .collect()
}
