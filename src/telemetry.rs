//! Tracing set-up with a log filter that a reload can change. (Being written.)
