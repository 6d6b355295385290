#![allow(clippy::unwrap_used)]
#[path = "../benches/common/mod.rs"]
mod common;
fn main() {
    let t = std::time::Instant::now();
    let c = skog_policy::compile(&common::cloud(1000)).unwrap();
    eprintln!("compile {:?}", t.elapsed());
    print!("{}", c.ruleset.full_script());
}
