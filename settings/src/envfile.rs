//! The config file: `NAME=value` lines with the quoting of systemd's
//! `EnvironmentFile=`, so one file serves both `stream-manager --config` and
//! a unit file. Blank lines and lines starting with `#` or `;` are comments;
//! whitespace around the name and before the value is ignored; in a value,
//! `'…'` is taken literally, `"…"` honours `\"`, `\\`, `` \` `` and `\$`,
//! a backslash outside quotes takes the next character literally, a
//! backslash at the end of a line continues the value on the next line, and
//! unquoted trailing whitespace is dropped. Unlike systemd, a line without
//! `=` or with an invalid name is an error rather than silently skipped: a
//! typo must not quietly become a default.

/// Largest config file accepted, bytes.
pub const FILE_BYTES_MAX: usize = 1024 * 1024;

/// The assignments in `text`, in order, or the first problem with its line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    if text.len() > FILE_BYTES_MAX {
        return Err(format!("larger than {FILE_BYTES_MAX} bytes"));
    }
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        // Start of a line: skip leading whitespace.
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        if chars[i] == '\n' || chars[i] == '\r' {
            if chars[i] == '\n' {
                line += 1;
            }
            i += 1;
            continue;
        }
        if chars[i] == '#' || chars[i] == ';' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let start_line = line;
        let mut name = String::new();
        while i < chars.len() && chars[i] != '=' && chars[i] != '\n' {
            name.push(chars[i]);
            i += 1;
        }
        let name = name.trim_end().to_string();
        if i >= chars.len() || chars[i] != '=' {
            return Err(format!(
                "line {start_line}: expected NAME=value, got {name:?}"
            ));
        }
        if !valid_name(&name) {
            return Err(format!("line {start_line}: {name:?} is not a valid name"));
        }
        i += 1; // '='
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        let mut value = String::new();
        // Length of `value` that must survive trailing-whitespace trimming
        // (quoted or escaped text).
        let mut kept = 0;
        while let Some(&c) = chars.get(i) {
            match c {
                '\n' => break,
                '\\' => match chars.get(i + 1) {
                    Some('\n') => {
                        line += 1;
                        i += 2;
                    }
                    Some(&next) => {
                        value.push(next);
                        kept = value.len();
                        i += 2;
                    }
                    None => i += 1,
                },
                '\'' => {
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None => {
                                return Err(format!("line {start_line}: unterminated '"));
                            }
                            Some('\'') => break,
                            Some(&ch) => {
                                if ch == '\n' {
                                    line += 1;
                                }
                                value.push(ch);
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                    kept = value.len();
                }
                '"' => {
                    i += 1;
                    loop {
                        match chars.get(i) {
                            None => {
                                return Err(format!("line {start_line}: unterminated \""));
                            }
                            Some('"') => break,
                            Some('\\') => match chars.get(i + 1) {
                                Some(&e @ ('"' | '\\' | '`' | '$')) => {
                                    value.push(e);
                                    i += 2;
                                }
                                Some('\n') => {
                                    line += 1;
                                    i += 2;
                                }
                                _ => {
                                    value.push('\\');
                                    i += 1;
                                }
                            },
                            Some(&ch) => {
                                if ch == '\n' {
                                    line += 1;
                                }
                                value.push(ch);
                                i += 1;
                            }
                        }
                    }
                    i += 1;
                    kept = value.len();
                }
                c => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        let trimmed = value[kept..].trim_end_matches([' ', '\t', '\r']).len();
        value.truncate(kept + trimmed);
        out.push((name, value));
    }
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn one(text: &str) -> String {
        let v = parse(text).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        v[0].1.clone()
    }

    #[test]
    fn systemd_quoting() {
        assert_eq!(one("A=plain"), "plain");
        assert_eq!(one("  A =  spaced value  \n"), "spaced value");
        assert_eq!(one("A='single $HOME \\n'"), "single $HOME \\n");
        assert_eq!(one(r#"A="double \"q\" \\ \$ \x""#), r#"double "q" \ $ \x"#);
        assert_eq!(one("A=one\\\ntwo"), "onetwo");
        assert_eq!(one("A=\"multi\nline\""), "multi\nline");
        assert_eq!(one("A=mixed'  quoted  'tail"), "mixed  quoted  tail");
        assert_eq!(one("A='  kept  '   "), "  kept  ");
        assert_eq!(one("A=esc\\ "), "esc ");
        assert_eq!(one("A="), "");
        assert_eq!(one("A=crlf\r\n"), "crlf");
    }

    #[test]
    fn comments_and_order() {
        let v = parse("# c\n; c\n\nA=1\n  # indented comment\nB=2\n").unwrap();
        assert_eq!(v, vec![("A".into(), "1".into()), ("B".into(), "2".into())]);
    }

    #[test]
    fn errors_name_the_line() {
        assert!(parse("A=1\nnot an assignment\n")
            .unwrap_err()
            .starts_with("line 2:"));
        assert!(parse("1A=x").unwrap_err().contains("not a valid name"));
        assert!(parse("A='open").unwrap_err().contains("unterminated"));
        assert!(parse("A=\"open").unwrap_err().contains("unterminated"));
    }
}
