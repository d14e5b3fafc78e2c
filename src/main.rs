use clap::Parser;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Installed as `kubectl-resilient` on PATH, the binary is the `kubectl resilient` plugin.
    if std::env::args_os().next().is_some_and(|argv0| resilient_operator::plugin::invoked_as_plugin(&argv0)) {
        return resilient_operator::plugin::main(resilient_operator::plugin::PluginCli::parse());
    }
    resilient_operator::cli::main(resilient_operator::cli::Cli::parse())
}
