//! Hugging Face hub: hub ids as inputs, pushing outputs. (Owned by the hub work; see issue 6.)
