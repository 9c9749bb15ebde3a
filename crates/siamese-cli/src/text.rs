//! Text from users' files (class names, paths) and numbers from checkpoints, made safe
//! and readable for the terminal.

/// `text` with control characters (escape sequences, newlines that would split a line
/// of output) and bidirectional overrides (which reorder what follows them) written as
/// `\u{..}` escapes; everything else as it is.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_bidi_control(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// The Unicode bidirectional formatting characters (embeddings, overrides, isolates and
/// marks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// A distance or threshold with four decimals, or in scientific notation from a million
/// up (a threshold of 1e300 printed 300 digits).
pub fn number(x: f64) -> String {
    if x.is_finite() && x.abs() >= 1e6 {
        format!("{x:.4e}")
    } else {
        format!("{x:.4}")
    }
}

/// An error as one line, outermost context first (like anyhow's `{:#}`), without saying
/// a path twice: a context that ends with the path its cause starts with ("loading the
/// model m.safetensors" over "m.safetensors: Is a directory") drops its copy.
pub fn error_line(error: &anyhow::Error) -> String {
    let parts: Vec<String> = error.chain().map(|e| e.to_string()).collect();
    let mut line = String::new();
    for (i, part) in parts.iter().enumerate() {
        let mut part = part.as_str();
        if let Some(cause) = parts.get(i + 1) {
            part = without_repeated_subject(part, cause);
        }
        if i > 0 {
            line.push_str(": ");
        }
        line.push_str(part);
    }
    line
}

/// `context` without its last word when `cause` opens with that word and a colon, and
/// without the preposition that led to it ("runs in x" -> "runs").
fn without_repeated_subject<'a>(context: &'a str, cause: &str) -> &'a str {
    match context.rsplit_once(' ') {
        Some((head, subject))
            if !subject.is_empty() && cause.starts_with(&format!("{subject}:")) =>
        {
            ["in", "from", "of", "at", "to"]
                .iter()
                .find_map(|p| head.strip_suffix(&format!(" {p}")))
                .unwrap_or(head)
        }
        _ => context,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_named_by_context_and_cause_is_said_once() {
        let io = anyhow::anyhow!("m.safetensors: Is a directory (os error 21)");
        let e = io.context("loading the model m.safetensors");
        assert_eq!(
            error_line(&e),
            "loading the model: m.safetensors: Is a directory (os error 21)"
        );
        // A cause about something else keeps the context whole.
        let e = anyhow::anyhow!("no such file").context("reading a.csv");
        assert_eq!(error_line(&e), "reading a.csv: no such file");
        let e = anyhow::anyhow!("r: no such file").context("reading the runs in r");
        assert_eq!(error_line(&e), "reading the runs: r: no such file");
        let e = anyhow::anyhow!("b.csv: no such file").context("reading a.csv");
        assert_eq!(error_line(&e), "reading a.csv: b.csv: no such file");
    }

    #[test]
    fn control_and_bidi_characters_are_escaped() {
        assert_eq!(terminal_safe("s1"), "s1");
        assert_eq!(terminal_safe("é 字"), "é 字");
        assert_eq!(terminal_safe("a\nb"), "a\\u{a}b");
        assert_eq!(terminal_safe("\u{1b}[31mred"), "\\u{1b}[31mred");
        assert_eq!(terminal_safe("x\u{202E}gnp.exe"), "x\\u{202e}gnp.exe");
    }

    #[test]
    fn numbers_stay_short() {
        assert_eq!(number(0.5), "0.5000");
        assert_eq!(number(0.0), "0.0000");
        assert_eq!(number(1e300), "1.0000e300");
        assert_eq!(number(3e-7), "0.0000");
        assert_eq!(number(123456.0), "123456.0000");
        assert_eq!(number(-2.5e6), "-2.5000e6");
    }
}
