// BadInput: what a reader of input nsbroker does not trust (a message, a
// D-Bus call's arguments, a policy file) throws from deep inside, and turns
// back into the Error it carries at its own edge. It never leaves a reader's
// public function, and it is not a fault of the program: the input was wrong.
#pragma once

#include "nsbroker/error.hpp"

namespace nsbroker {

struct BadInput {
    Error error;
};

} // namespace nsbroker
