use std::process::ExitCode;

fn main() -> ExitCode {
    seqwatch::cli::main()
}
