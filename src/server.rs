//! Wires the application into the lifecycle. (Being written.)
