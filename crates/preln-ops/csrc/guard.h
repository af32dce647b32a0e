// What every function of the shim shares: C++ exceptions caught and kept as the thread's last
// error, which preln_last_error() returns.
#pragma once
#include <c10/util/Exception.h>
#include <exception>
#include <string>

extern thread_local std::string last_error;

template <typename F> static int guarded(F f) {
  try {
    return f();
  } catch (const c10::Error &e) {
    // The message with the op and shapes, without libtorch's C++ stack trace.
    last_error = e.what_without_backtrace();
    return -1;
  } catch (const std::exception &e) {
    last_error = e.what();
    return -1;
  }
}
