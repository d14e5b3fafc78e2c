use clap::Parser;

fn main() -> std::process::ExitCode {
    resilient_operator::cli::main(resilient_operator::cli::Cli::parse())
}
