//! `egret validate`: exit 0 and print the compiled table, or exit 1 with every error.

use std::process::ExitCode;

use crate::cli::ConfigArgs;

pub fn validate(args: &ConfigArgs) -> ExitCode {
    match args.build() {
        Ok(compiled) => {
            for w in &compiled.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", egret_config::describe(&compiled.snapshot));
            if compiled.snapshot.listeners.is_empty() {
                if let Ok(crate::cli::ConfigState::Empty(why)) = args.build_or_wait() {
                    eprintln!(
                        "note: {} holds no Istio resources ({why}); `egret run` would start not ready and wait for them",
                        args.paths_display()
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{} error(s); configuration not valid", errors.len());
            ExitCode::FAILURE
        }
    }
}
