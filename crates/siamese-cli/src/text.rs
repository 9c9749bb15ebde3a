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

#[cfg(test)]
mod tests {
    use super::*;

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
