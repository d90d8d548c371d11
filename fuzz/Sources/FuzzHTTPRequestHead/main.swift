import CFuzzerDriver
#if canImport(Glibc)
import Glibc
#endif

exit(agentchat_fuzzer_main(CommandLine.argc, CommandLine.unsafeArgv, fuzzHTTP))
