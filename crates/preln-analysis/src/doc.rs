//! The one document model of every report (`analyze`'s `init.md` and `depth.md`, `reproduce`'s
//! report), rendered as Markdown (images by relative path) and as one self-contained HTML page
//! (images embedded as data URIs). Inline markup is limited to `code` spans.

use std::fmt::Write;
use std::path::Path;

use std::path::PathBuf;

/// Why a report (its document, figures or data files) could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
}

pub enum Block {
    Heading(usize, String),
    Para(String),
    List(Vec<String>),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// A PNG under the report's folder, by relative path.
    Image {
        path: String,
        alt: String,
    },
    Code(String),
    /// Collapsed in HTML, a titled section in Markdown.
    Details {
        summary: String,
        body: Vec<Block>,
    },
}

pub fn markdown(blocks: &[Block]) -> String {
    let mut s = String::new();
    for b in blocks {
        match b {
            Block::Heading(level, text) => {
                let _ = writeln!(s, "{} {text}\n", "#".repeat(*level));
            }
            Block::Para(text) => {
                let _ = writeln!(s, "{text}\n");
            }
            Block::List(items) => {
                for i in items {
                    let _ = writeln!(s, "- {i}");
                }
                s.push('\n');
            }
            Block::Table { head, rows } => {
                let cell = |c: &String| c.replace('|', "\\|");
                let _ = writeln!(s, "| {} |", head.iter().map(cell).collect::<Vec<_>>().join(" | "));
                let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
                for r in rows {
                    let _ = writeln!(s, "| {} |", r.iter().map(cell).collect::<Vec<_>>().join(" | "));
                }
                s.push('\n');
            }
            Block::Image { path, alt } => {
                let _ = writeln!(s, "![{alt}]({path})\n");
            }
            Block::Code(text) => {
                let _ = writeln!(s, "```\n{}\n```\n", text.trim_end());
            }
            Block::Details { summary, body } => {
                let _ = writeln!(s, "**{summary}**\n");
                s.push_str(&markdown(body));
            }
        }
    }
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Escapes text and turns `code` spans into <code> elements.
fn inline(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;\
line-height:1.45;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}\
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f2f2f2}\
img{max-width:100%;border:1px solid #ddd}pre{background:#f6f6f6;padding:0.7em;overflow-x:auto;font-size:0.85em}\
code{background:#f3f3f3;padding:0 3px}summary{cursor:pointer;font-weight:600}";

/// One HTML page with every image of `blocks` (relative to `root`) embedded.
pub fn html(blocks: &[Block], title: &str, root: &Path) -> Result<String, ReportError> {
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    );
    html_blocks(&mut s, blocks, root)?;
    s.push_str("</body></html>\n");
    Ok(s)
}

fn html_blocks(s: &mut String, blocks: &[Block], root: &Path) -> Result<(), ReportError> {
    for b in blocks {
        match b {
            Block::Heading(level, text) => {
                let _ = writeln!(s, "<h{level}>{}</h{level}>", inline(text));
            }
            Block::Para(text) => {
                let _ = writeln!(s, "<p>{}</p>", inline(text));
            }
            Block::List(items) => {
                s.push_str("<ul>\n");
                for i in items {
                    let _ = writeln!(s, "<li>{}</li>", inline(i));
                }
                s.push_str("</ul>\n");
            }
            Block::Table { head, rows } => {
                s.push_str("<table><tr>");
                for h in head {
                    let _ = write!(s, "<th>{}</th>", inline(h));
                }
                s.push_str("</tr>\n");
                for r in rows {
                    s.push_str("<tr>");
                    for c in r {
                        let _ = write!(s, "<td>{}</td>", inline(c));
                    }
                    s.push_str("</tr>\n");
                }
                s.push_str("</table>\n");
            }
            Block::Image { path, alt } => {
                let file = root.join(path);
                let bytes = std::fs::read(&file).map_err(|error| ReportError::Io { path: file.clone(), error })?;
                let _ = writeln!(
                    s,
                    "<p><img alt=\"{}\" src=\"data:image/png;base64,{}\"></p>",
                    escape(alt),
                    base64(&bytes)
                );
            }
            Block::Code(text) => {
                let _ = writeln!(s, "<pre>{}</pre>", escape(text.trim_end()));
            }
            Block::Details { summary, body } => {
                let _ = writeln!(s, "<details><summary>{}</summary>", inline(summary));
                html_blocks(s, body, root)?;
                s.push_str("</details>\n");
            }
        }
    }
    Ok(())
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, enc) in
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("foobar", "Zm9vYmFy")]
        {
            assert_eq!(base64(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn html_escapes_and_marks_code() {
        assert_eq!(inline("a <b> & `x<y`"), "a &lt;b&gt; &amp; <code>x&lt;y</code>");
        let doc =
            [Block::Heading(1, "T".into()), Block::Table { head: vec!["a|b".into()], rows: vec![vec!["1".into()]] }];
        assert!(markdown(&doc).contains("| a\\|b |\n|---|\n| 1 |"));
        let page = html(&doc, "t", Path::new(".")).unwrap();
        assert!(page.contains("<h1>T</h1>") && page.contains("<td>1</td>"));
    }
}
