//! A PNG bar chart with no font or image dependency: RGB pixels, a 3x5 bitmap font for labels,
//! and a PNG encoder on top of flate2 (already a dependency of the daemon).

use flate2::write::ZlibEncoder;
use flate2::Compression;
use std::io::Write;

/// One group of bars: a label and (series name, value) pairs; bars are scaled per group so
/// milliseconds and MiB can share a chart.
pub struct Group {
    pub label: String,
    pub bars: Vec<(String, f64)>,
}

const W: usize = 1200;
const SCALE: usize = 2;
const GLYPH_W: usize = 4 * SCALE;
const BAR_H: usize = 12;
const LABEL_W: usize = 420;
const COLORS: [[u8; 3]; 4] = [
    [0x1f, 0x77, 0xb4],
    [0xff, 0x7f, 0x0e],
    [0x7f, 0x7f, 0x7f],
    [0x2c, 0xa0, 0x2c],
];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![0xff; w * h * 3],
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str) {
        for (n, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        self.rect(
                            x + n * GLYPH_W + col * SCALE,
                            y + r * SCALE,
                            SCALE,
                            SCALE,
                            [0, 0, 0],
                        );
                    }
                }
            }
        }
    }

    fn png(&self) -> std::io::Result<Vec<u8>> {
        let mut raw = Vec::with_capacity((self.w * 3 + 1) * self.h);
        for row in self.px.chunks(self.w * 3) {
            raw.push(0); // filter type None
            raw.extend_from_slice(row);
        }
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(&raw)?;
        let idat = z.finish()?;
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
        let mut out = vec![0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &idat);
        chunk(&mut out, b"IEND", &[]);
        Ok(out)
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Render `groups` (title on top, a legend of series names) as PNG bytes.
pub fn render(title: &str, series: &[&str], groups: &[Group]) -> std::io::Result<Vec<u8>> {
    let row_h = BAR_H * series.len() + 10;
    let top = 60;
    let h = top + groups.len() * row_h + 20;
    let mut c = Canvas::new(W, h);
    c.text(10, 10, title);
    for (i, s) in series.iter().enumerate() {
        let x = 10 + i * 200;
        c.rect(x, 32, 14, 10, COLORS[i % COLORS.len()]);
        c.text(x + 20, 32, s);
    }
    let bar_max = W - LABEL_W - 140;
    for (g, group) in groups.iter().enumerate() {
        let y0 = top + g * row_h;
        c.text(10, y0 + 4, &group.label);
        let max = group
            .bars
            .iter()
            .map(|(_, v)| *v)
            .fold(0.0f64, f64::max)
            .max(f64::MIN_POSITIVE);
        for (name, v) in &group.bars {
            let Some(i) = series.iter().position(|s| s == name) else {
                continue;
            };
            let y = y0 + i * BAR_H;
            let len = ((v / max) * bar_max as f64).round().max(1.0) as usize;
            c.rect(LABEL_W, y, len, BAR_H - 2, COLORS[i % COLORS.len()]);
            c.text(LABEL_W + len + 6, y, &format!("{v:.1}"));
        }
        c.rect(10, y0 + row_h - 4, W - 20, 1, [0xdd, 0xdd, 0xdd]);
    }
    c.png()
}

/// 3x5 glyphs, one 3-bit row each (most significant bit on the left); lowercase draws as
/// uppercase, unknown characters as a blank.
fn glyph(ch: char) -> [u8; 5] {
    match ch.to_ascii_uppercase() {
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [6, 1, 2, 4, 7],
        '3' => [6, 1, 2, 1, 6],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 6, 1, 6],
        '6' => [3, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 6],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        '/' => [1, 1, 2, 4, 4],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '(' => [2, 4, 4, 4, 2],
        ')' => [2, 1, 1, 1, 2],
        ':' => [0, 2, 0, 2, 0],
        '_' => [0, 0, 0, 0, 7],
        '%' => [5, 1, 2, 4, 5],
        '=' => [0, 7, 0, 7, 0],
        '>' => [4, 2, 1, 2, 4],
        '<' => [1, 2, 4, 2, 1],
        _ => [0; 5],
    }
}
