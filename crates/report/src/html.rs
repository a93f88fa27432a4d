//! A small HTML builder: every piece of text goes through [`esc`], images are embedded
//! as base64 `data:` URIs, and nothing refers to anything outside the file.
//!
//! # Why not a template crate
//! The brief asks for a template crate (askama, minijinja, tera) when one is available
//! offline; none was in this machine's cargo registry cache, and the project must build
//! from that cache. A report is a fixed sequence of sections whose content is mostly
//! generated tables and images, so a builder with mandatory escaping is as safe as an
//! auto-escaping template and keeps the report crate dependency-free (no base64 crate
//! either: [`base64`] is 20 lines).

use std::fmt::Write as _;

/// Escape text for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::with_capacity(data.len().div_ceil(3) * 4);
    for ch in data.chunks(3) {
        let b = [ch[0], *ch.get(1).unwrap_or(&0), *ch.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        o.push(A[(n >> 18) as usize & 63] as char);
        o.push(A[(n >> 12) as usize & 63] as char);
        o.push(if ch.len() > 1 { A[(n >> 6) as usize & 63] as char } else { '=' });
        o.push(if ch.len() > 2 { A[n as usize & 63] as char } else { '=' });
    }
    o
}

/// An HTML fragment under construction. Only the methods below write markup, and each
/// escapes the text it is given.
#[derive(Debug, Default, Clone)]
pub struct Html {
    buf: String,
}

impl Html {
    pub fn new() -> Html {
        Html::default()
    }
    pub fn as_str(&self) -> &str {
        &self.buf
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// A paragraph of text.
    pub fn p(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.buf, "<p>{}</p>", esc(text));
        self
    }
    /// A paragraph with a CSS class (`note`, `warn`, `ok`).
    pub fn p_class(&mut self, class: &str, text: &str) -> &mut Self {
        let _ = writeln!(self.buf, "<p class=\"{}\">{}</p>", esc(class), esc(text));
        self
    }
    /// A sub-heading.
    pub fn h3(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.buf, "<h3>{}</h3>", esc(text));
        self
    }
    /// Preformatted text (commands, configuration files).
    pub fn pre(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.buf, "<pre>{}</pre>", esc(text));
        self
    }
    /// A PNG embedded as a data URI, in a figure with a caption.
    pub fn png(&mut self, png: &[u8], alt: &str, caption: &str) -> &mut Self {
        let _ = writeln!(
            self.buf,
            "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>",
            esc(alt),
            base64(png),
            esc(caption)
        );
        self
    }
    /// Start a row of figures shown side by side.
    pub fn row_start(&mut self) -> &mut Self {
        self.buf.push_str("<div class=\"row\">\n");
        self
    }
    pub fn row_end(&mut self) -> &mut Self {
        self.buf.push_str("</div>\n");
        self
    }
    /// A table; cells are text. `keys`, when given, adds `data-key` attributes to the
    /// cells of a two-column key/value table so tests can find each number.
    pub fn table(&mut self, head: &[&str], rows: &[Vec<String>]) -> &mut Self {
        self.buf.push_str("<table>\n<thead><tr>");
        for h in head {
            let _ = write!(self.buf, "<th>{}</th>", esc(h));
        }
        self.buf.push_str("</tr></thead>\n<tbody>\n");
        for r in rows {
            self.buf.push_str("<tr>");
            for c in r {
                let _ = write!(self.buf, "<td>{}</td>", esc(c));
            }
            self.buf.push_str("</tr>\n");
        }
        self.buf.push_str("</tbody>\n</table>\n");
        self
    }
    /// A key/value table whose value cells carry `data-key="KEY"`.
    pub fn kv_table(&mut self, rows: &[(String, String)]) -> &mut Self {
        self.buf.push_str("<table class=\"kv\">\n<tbody>\n");
        for (k, v) in rows {
            let _ =
                writeln!(self.buf, "<tr><th>{}</th><td data-key=\"{}\">{}</td></tr>", esc(k), esc(k), esc(v));
        }
        self.buf.push_str("</tbody>\n</table>\n");
        self
    }
    /// A collapsed block with a summary line; `inner` is already-built HTML.
    pub fn details(&mut self, summary: &str, inner: &Html) -> &mut Self {
        let _ = writeln!(self.buf, "<details><summary>{}</summary>\n{}</details>", esc(summary), inner.buf);
        self
    }
    /// Append another fragment.
    pub fn append(&mut self, other: &Html) -> &mut Self {
        self.buf.push_str(&other.buf);
        self
    }
}

/// A titled section of a report.
#[derive(Debug, Clone)]
pub struct Section {
    pub id: String,
    pub title: String,
    pub body: Html,
}

const CSS: &str = "body{font-family:'DejaVu Sans',Verdana,Arial,sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1em;color:#222}\
h1{font-size:1.6em}h2{border-bottom:2px solid #1f77b4;padding-bottom:.2em;margin-top:2em}\
pre{background:#f4f4f4;padding:.6em;overflow-x:auto;white-space:pre-wrap}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
thead th{background:#eef3f8}table.kv th{background:#f7f7f7;font-weight:normal}\
figure{display:inline-block;margin:.4em}figcaption{font-size:.85em;color:#555;max-width:640px}\
img{max-width:100%}.row{display:flex;flex-wrap:wrap;gap:.5em}\
.note{color:#555}.warn{color:#a33;font-weight:bold}.ok{color:#262}nav li{margin:.15em 0}";

/// The whole document: title, generation note, table of contents, sections.
pub fn document(title: &str, subtitle: &str, sections: &[Section]) -> String {
    let mut o = String::new();
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(o, "<title>{}</title>\n<style>{}</style>\n</head>\n<body>", esc(title), CSS);
    let _ = writeln!(o, "<h1>{}</h1>\n<p class=\"note\">{}</p>\n<nav><ol>", esc(title), esc(subtitle));
    for s in sections {
        let _ = writeln!(o, "<li><a href=\"#{}\">{}</a></li>", esc(&s.id), esc(&s.title));
    }
    o.push_str("</ol></nav>\n");
    for s in sections {
        let _ = writeln!(
            o,
            "<section id=\"{}\">\n<h2>{}</h2>\n{}</section>",
            esc(&s.id),
            esc(&s.title),
            s.body.as_str()
        );
    }
    o.push_str("</body>\n</html>\n");
    o
}

/// Check a document's structure: every non-void element closed in order, attributes
/// quoted, no `src=`/`href=` to anything but a same-document `#anchor` or a `data:` URI,
/// every `<img>` a `data:image/…;base64,` URI, no `<script>`, `<link>` or `<iframe>`.
/// Returns the number of `<img>` elements. Used by the tests and by `cryoforge report`
/// as a self-check before writing.
pub fn check_html(doc: &str) -> std::result::Result<usize, String> {
    const VOID: [&str; 8] = ["meta", "img", "br", "hr", "input", "link", "source", "wbr"];
    let lower = doc.to_ascii_lowercase();
    if !lower.starts_with("<!doctype html>") {
        return Err("missing <!DOCTYPE html>".into());
    }
    let b = doc.as_bytes();
    let mut stack: Vec<String> = Vec::new();
    let mut imgs = 0;
    let mut i = 0;
    let mut raw_text_until: Option<&str> = None;
    let (mut line, mut last) = (1usize, 0usize);
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        line += doc[last..i].matches('\n').count();
        last = i;
        let end =
            doc[i..].find('>').map(|e| i + e).ok_or_else(|| format!("line {line}: unterminated tag"))?;
        let tag = &doc[i + 1..end];
        if let Some(until) = raw_text_until {
            if tag.eq_ignore_ascii_case(until) {
                raw_text_until = None;
                stack.pop();
            }
            i = end + 1;
            continue;
        }
        if tag.starts_with('!') {
            i = end + 1;
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim().to_ascii_lowercase();
            match stack.pop() {
                Some(open) if open == name => {}
                Some(open) => return Err(format!("line {line}: </{name}> closes <{open}>")),
                None => return Err(format!("line {line}: </{name}> with nothing open")),
            }
            i = end + 1;
            continue;
        }
        let name: String =
            tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
        if name.is_empty() {
            return Err(format!("line {line}: bad tag <{tag}>"));
        }
        if ["script", "link", "iframe", "object", "embed"].contains(&name.as_str()) {
            return Err(format!("line {line}: <{name}> is not allowed in a self-contained report"));
        }
        // Attributes: name="value" pairs.
        let mut rest = tag[name.len()..].trim_start();
        let mut src = None;
        while !rest.is_empty() && rest != "/" {
            let an: String = rest.chars().take_while(|c| !c.is_whitespace() && *c != '=').collect();
            rest = rest[an.len()..].trim_start();
            if let Some(r) = rest.strip_prefix('=') {
                let r = r.trim_start();
                let q = r
                    .chars()
                    .next()
                    .filter(|c| *c == '"' || *c == '\'')
                    .ok_or_else(|| format!("line {line}: unquoted attribute {an}"))?;
                let close =
                    r[1..].find(q).ok_or_else(|| format!("line {line}: unterminated attribute {an}"))?;
                let val = &r[1..1 + close];
                let al = an.to_ascii_lowercase();
                if al == "src" || al == "href" || al == "srcset" || al == "poster" || al == "action" {
                    let v = val.trim();
                    if !(v.starts_with('#') || v.starts_with("data:")) {
                        return Err(format!("line {line}: {al}=\"{v}\" refers outside the document"));
                    }
                    if al == "src" {
                        src = Some(v.to_string());
                    }
                }
                if al == "style" && val.contains("url(") {
                    return Err(format!("line {line}: style with url()"));
                }
                rest = r[2 + close..].trim_start();
            } else if an.is_empty() {
                return Err(format!("line {line}: cannot parse attributes of <{name}>"));
            }
        }
        if name == "img" {
            imgs += 1;
            match src {
                Some(s) if s.starts_with("data:image/") && s.contains(";base64,") => {}
                _ => return Err(format!("line {line}: <img> without an embedded data:image URI")),
            }
        }
        if name == "style" {
            stack.push(name.clone());
            raw_text_until = Some("/style");
        } else if !VOID.contains(&name.as_str()) && !tag.ends_with('/') {
            stack.push(name);
        }
        i = end + 1;
    }
    if let Some(open) = stack.pop() {
        return Err(format!("<{open}> is never closed"));
    }
    if lower.contains("url(http") || lower.contains("@import") {
        return Err("the style sheet refers outside the document".into());
    }
    Ok(imgs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_rejects_what_it_should() {
        let ok = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><style>a>b{}</style></head><body><p>x</p><img alt=\"a\" src=\"data:image/png;base64,AA==\"><a href=\"#s\">s</a></body></html>";
        assert_eq!(check_html(ok), Ok(1));
        assert!(check_html(&ok.replace("<p>x</p>", "<p>x")).unwrap_err().contains("closes <p>"));
        assert!(check_html(&ok.replace("data:image/png;base64,AA==", "https://x.org/a.png"))
            .unwrap_err()
            .contains("refers outside"));
        assert!(check_html(&ok.replace("#s", "http://x.org")).unwrap_err().contains("refers outside"));
        assert!(check_html(&ok.replace("<p>x</p>", "<script>1</script>"))
            .unwrap_err()
            .contains("not allowed"));
        assert!(check_html(&ok.replace("<p>x</p>", "<img alt=\"q\">")).unwrap_err().contains("data:image"));
        assert!(check_html(&ok.replace("</body>", "")).is_err());
        assert!(check_html("<html></html>").is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn text_is_escaped_everywhere() {
        let mut h = Html::new();
        h.p("<script>alert('x')</script> & co").table(&["a<b"], &[vec!["\"q\"".into()]]);
        let s = h.as_str();
        assert!(!s.contains("<script>") && s.contains("&lt;script&gt;") && s.contains("&amp; co"));
        assert!(s.contains("a&lt;b") && s.contains("&quot;q&quot;"));
        let d = document("t<", "s", &[Section { id: "x\"y".into(), title: "T".into(), body: h }]);
        assert!(d.contains("<title>t&lt;</title>") && d.contains("id=\"x&quot;y\""));
    }
}
