#ifndef AGENTCHAT_FUZZER_DRIVER_H
#define AGENTCHAT_FUZZER_DRIVER_H

#include <stddef.h>
#include <stdint.h>

/// Runs libFuzzer's driver (flags, corpus, mutation loop) over `test_one_input` and returns its exit status.
///
/// Why this exists: a SwiftPM executable always gets a Swift `main`, which wins over the `main` in
/// libclang_rt.fuzzer, so a target that only defines `LLVMFuzzerTestOneInput` would start and exit at once. Each
/// target's main.swift calls this instead, and libFuzzer's public `LLVMFuzzerRunDriver` does the rest.
int agentchat_fuzzer_main(int argc, char **argv, int (*test_one_input)(const uint8_t *data, size_t size));

#endif
