//! `v4l2-sys-regen WRAPPER OUT`: bindgen on `WRAPPER` (`#include <linux/videodev2.h>`) for the
//! target named by `$TARGET`, with `$BINDGEN_EXTRA_CLANG_ARGS_<target>`, written to `OUT`:
//! the build script of v4l2-sys-mit 0.3.0, run outside cargo's build.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, wrapper, out] = args.as_slice() else {
        eprintln!("usage: v4l2-sys-regen WRAPPER OUT");
        std::process::exit(2);
    };
    bindgen::Builder::default()
        .header(wrapper.as_str())
        .generate()
        .unwrap_or_else(|e| panic!("bindgen on {wrapper}: {e}"))
        .write_to_file(out)
        .unwrap_or_else(|e| panic!("writing {out}: {e}"));
}
