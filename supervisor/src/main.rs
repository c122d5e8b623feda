//! `supervisor`: not built yet (issue 3). The crate exists so the workspace has
//! the product's shape; the process refuses to start rather than pretend.

fn main() -> std::process::ExitCode {
    eprintln!("supervisor is not implemented yet (issue 3); see README.md");
    std::process::ExitCode::from(2)
}
