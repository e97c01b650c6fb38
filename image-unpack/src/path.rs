//! Entry paths from a tar header, reduced to plain components.

use crate::{Error, Result};

/// Split an entry path into its components. Leading `/` and `./` are
/// dropped (Docker's archives use both); `..` and NUL are refused.
pub fn components(raw: &[u8]) -> Result<Vec<String>> {
    let text = std::str::from_utf8(raw).map_err(|_| Error::UnsafePath {
        path: String::from_utf8_lossy(raw).into_owned(),
        why: "not UTF-8",
    })?;
    let mut out = Vec::new();
    for c in text.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(Error::UnsafePath {
                    path: text.into(),
                    why: "contains ..",
                })
            }
            c if c.contains('\0') => {
                return Err(Error::UnsafePath {
                    path: text.into(),
                    why: "contains NUL",
                })
            }
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_and_refuses() {
        assert_eq!(components(b"./a/b/").expect("ok"), vec!["a", "b"]);
        assert_eq!(
            components(b"/etc//passwd").expect("ok"),
            vec!["etc", "passwd"]
        );
        assert!(components(b"").expect("ok").is_empty());
        assert!(components(b"a/../../etc").is_err());
        assert!(components(b"..").is_err());
        assert!(components(&[0xff, 0x2f]).is_err());
    }
}
