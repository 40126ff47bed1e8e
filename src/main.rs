use std::process::ExitCode;

fn main() -> ExitCode {
    cbgate::cli::main()
}
