//! `ingest`: not built yet (issue 7). The crate exists so the workspace has
//! the product's shape; the process refuses to start rather than pretend.

fn main() -> std::process::ExitCode {
    eprintln!("ingest is not implemented yet (issue 7); see README.md");
    std::process::ExitCode::from(2)
}
