//! The `export-kinesis` process; everything is in the library (`src/lib.rs`), which the
//! single-binary bundle also runs.

fn main() -> std::process::ExitCode {
    export_kinesis::main()
}
