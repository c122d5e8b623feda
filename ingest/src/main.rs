//! `ingest`: the SDK endpoint process (see `ingest::process`).

fn main() -> std::process::ExitCode {
    ingest::process::main()
}
