//! Link settings of the binaries.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Packed relative relocations (DT_RELR): a position-independent binary carries one 24-byte
    // record per pointer to fix up at load, which the loader reads in full at every start; the
    // packed form is a bitmap of a few kB. kiosk-agent's table was 350 kB of the file and of its
    // resident memory. Needs binutils 2.38 and glibc 2.36 (Debian 12); the package's libc6
    // dependency says so (dpkg-shlibdeps sees GLIBC_ABI_DT_RELR).
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu")
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
