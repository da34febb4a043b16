// ngx_ipc core tests: default sanitizer options, compiled in so that a test
// binary run by hand behaves as under ctest. $ASAN_OPTIONS, $UBSAN_OPTIONS and
// $TSAN_OPTIONS still override them.

#if defined(__SANITIZE_ADDRESS__)  // GCC
#define NGX_IPC_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define NGX_IPC_TSAN 1
#endif
#if defined(__has_feature)  // clang
#if __has_feature(address_sanitizer)
#define NGX_IPC_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define NGX_IPC_TSAN 1
#endif
#endif

#define NGX_IPC_SANITIZER_OPTIONS(fn, options) \
  extern "C" __attribute__((visibility("default"), used)) const char* fn() { return options; }

#if defined(NGX_IPC_ASAN)
NGX_IPC_SANITIZER_OPTIONS(__asan_default_options, "detect_leaks=1:check_initialization_order=1")
NGX_IPC_SANITIZER_OPTIONS(__ubsan_default_options, "print_stacktrace=1:halt_on_error=1")
#endif

#if defined(NGX_IPC_TSAN)
// halt_on_error: the first race fails the test that caused it, by name.
NGX_IPC_SANITIZER_OPTIONS(__tsan_default_options, "halt_on_error=1:second_deadlock_stack=1")
#endif
