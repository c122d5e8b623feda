//! The command line of the child binaries (`store`, `ingest`, the
//! exporters): they are configured by their environment only, answer
//! `--help` and `--version`, and refuse anything else (exit 2) rather than
//! start with an argument they would ignore.

use std::process::ExitCode;

/// What to do with the arguments of a child binary.
#[derive(Debug, PartialEq, Eq)]
pub enum ChildArgs {
    Run,
    /// Print this and exit with this code.
    Exit(String, u8),
}

/// Decides from `args` (without the program name).
pub fn child_args(process: &str, about: &str, args: &[String]) -> ChildArgs {
    match args {
        [] => ChildArgs::Run,
        [a] if a == "--help" || a == "-h" => {
            let mut text = format!(
                "{process} {}\n{about}\n\nusage: {process}\n\n\
                 Started by `stream-manager`, which validates the configuration first; \
                 configured by the environment:\n",
                crate::VERSION
            );
            for (name, meaning, default) in crate::KNOWN {
                text.push_str(&format!("  {name}\n      {meaning} (default: {default})\n"));
            }
            ChildArgs::Exit(text, 0)
        }
        [a] if a == "--version" || a == "-V" => {
            ChildArgs::Exit(format!("{process} {}\n", crate::VERSION), 0)
        }
        [a, ..] => ChildArgs::Exit(
            format!(
                "{process}: unexpected argument {a:?}: {process} takes no arguments (settings come from the environment; see {process} --help)\n"
            ),
            crate::EXIT_CONFIG,
        ),
    }
}

/// Handles the process's own arguments: `None` to go on, or the exit code
/// after printing help, the version or the error.
pub fn handle_child_args(process: &str, about: &str) -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match child_args(process, about, &args) {
        ChildArgs::Run => None,
        ChildArgs::Exit(text, 0) => {
            print!("{text}");
            Some(ExitCode::SUCCESS)
        }
        ChildArgs::Exit(text, code) => {
            eprint!("{text}");
            Some(ExitCode::from(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn help_version_and_refusal() {
        assert_eq!(child_args("store", "x", &[]), ChildArgs::Run);
        assert!(
            matches!(child_args("store", "x", &args(&["--help"])), ChildArgs::Exit(t, 0) if t.contains("STREAM_MANAGER_STORE_ROOT_DIR"))
        );
        assert!(
            matches!(child_args("store", "x", &args(&["-V"])), ChildArgs::Exit(t, 0) if t.starts_with("store 0."))
        );
        assert!(
            matches!(child_args("store", "x", &args(&["--root", "/x"])), ChildArgs::Exit(t, 2) if t.contains("\"--root\""))
        );
    }
}
