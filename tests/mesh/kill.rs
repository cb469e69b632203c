//! Kill and resume: nothing reaches or leaves a killed agent once `kill` returns; held work
//! replays in order on resume; outbound rejection is retroactive and recorded.
