// SwiftPM needs a source file in a C target; every helper is an inline function in include/agentchat_lws_shims.h.
#include "agentchat_lws_shims.h"
