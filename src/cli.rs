//! Subcommands. (Being written.)
