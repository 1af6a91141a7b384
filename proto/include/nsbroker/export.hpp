// What every installed nsbroker header states first: the language it needs,
// and NSBROKER_PUBLIC, the mark of what libnsbroker exports. The library is
// built with hidden visibility: whatever is not marked stays inside it.
#pragma once

#if __cplusplus < 202002L
#error "nsbroker's headers need C++20: compile with -std=c++20 (pkg-config --cflags nsbroker)"
#endif

#define NSBROKER_PUBLIC __attribute__((visibility("default")))
