use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = egret::cli::Cli::parse();
    egret::cli::main(cli)
}
