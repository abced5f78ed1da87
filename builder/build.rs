// The stock profiles and overlays are embedded with include_dir; rebuild when they change.
fn main() {
    println!("cargo:rerun-if-changed=../profiles");
    println!("cargo:rerun-if-changed=../overlays");
}
