//! `skogd --check-config`: exit 0 for a valid file, 2 with a reason naming file and line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn check(contents: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("skog-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", contents.len()));
    std::fs::write(&path, contents).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_skogd"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_shipped_example_is_valid() {
    let (code, out) = check(include_str!("../../dist/skog.toml"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn an_unknown_key_exits_2_naming_the_line() {
    let (code, out) = check("[bgp]\nasn = 65002\nrouter_id = \"192.0.2.2\"\nlisten_prot = 179\n");
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("line 4") && out.contains("listen_prot"),
        "{out}"
    );
}

#[test]
fn a_missing_file_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_skogd"))
        .args(["--check-config", "/nonexistent/skog.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/skog.toml"));
}
