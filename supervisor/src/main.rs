//! The `stream-manager` command; everything is in the library
//! (`src/lib.rs`), which the single-binary bundle also runs.

fn main() -> std::process::ExitCode {
    stream_manager::main()
}
