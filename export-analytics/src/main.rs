//! `export-analytics`: not built yet (issue 6). The crate exists so the workspace has
//! the product's shape; the process refuses to start rather than pretend.

fn main() -> std::process::ExitCode {
    eprintln!("export-analytics is not implemented yet (issue 6); see README.md");
    std::process::ExitCode::from(2)
}
