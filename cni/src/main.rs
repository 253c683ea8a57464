//! The `netfence-cni` binary: runs one CNI invocation from the process environment
//! and stdin (see [`netfence_cni::plugin`]), prints the result or the error object on
//! stdout and warnings on stderr.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use netfence_cni::plugin::{self, SocketAgent};
use netfence_cni::spec::{CniError, Env, code};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let env = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => Env::read(|name| std::env::var(name).ok()),
        Err(error) => Err(CniError::new(
            code::IO_FAILURE,
            format!("reading stdin: {error}"),
        )),
    };
    let output = plugin::run(env, &stdin, &mut SocketAgent);
    let mut err = std::io::stderr().lock();
    for line in &output.stderr {
        let _ = writeln!(err, "{line}");
    }
    if let Some(text) = &output.stdout {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::from(output.exit)
}
