//! skogctl, the operator CLI (talks to skogd's local API; built under the daemon issue).

fn main() -> std::process::ExitCode {
    eprintln!("skogctl: not implemented yet");
    std::process::ExitCode::from(2)
}
