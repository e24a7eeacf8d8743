//! Safety numbers: the MLS epoch authenticator shown as 30 digits.
