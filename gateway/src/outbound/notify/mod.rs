//! Recipient notifications: renders a parcel notice in the recipient's language and delivers
//! it through the channel configured for its site and carrier.
