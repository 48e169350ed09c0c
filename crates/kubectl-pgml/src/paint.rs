//! ANSI colours, only when asked for (stdout is a terminal and NO_COLOR is unset).

pub const BOLD: &str = "1";
pub const RED: &str = "31";
pub const GREEN: &str = "32";
pub const YELLOW: &str = "33";

pub struct Paint {
    on: bool,
}

impl Paint {
    pub fn new(on: bool) -> Paint {
        Paint { on }
    }

    /// `text` in the colour or style `code` (one of the constants above), or as is.
    pub fn code(&self, code: &str, text: &str) -> String {
        if self.on && !text.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// Colour for stdout: a terminal, and no `NO_COLOR` (https://no-color.org).
pub fn stdout_wants_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
