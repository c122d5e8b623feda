//! `export-kinesis`: not built yet (issue 4). The crate exists so the workspace has
//! the product's shape; the process refuses to start rather than pretend.

fn main() -> std::process::ExitCode {
    eprintln!("export-kinesis is not implemented yet (issue 4); see README.md");
    std::process::ExitCode::from(2)
}
