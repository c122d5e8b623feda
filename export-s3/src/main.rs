//! `export-s3`: not built yet (issue 5). The crate exists so the workspace has
//! the product's shape; the process refuses to start rather than pretend.

fn main() -> std::process::ExitCode {
    eprintln!("export-s3 is not implemented yet (issue 5); see README.md");
    std::process::ExitCode::from(2)
}
