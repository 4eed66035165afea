//! This crate is the `pingora` build of the floor (see `src/main.rs`):
//! crates.io Pingora, unpatched.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(floor_stock)");
    println!("cargo::rustc-cfg=floor_stock");
}
