//! Raw MBAP bytes against `serve_stream`: exact answers, malformed PDUs, broken framing.
#![allow(clippy::unwrap_used)]

use locker_sim::{LockBoardConfig, LockBoardSim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn raw_frames_over_a_duplex_stream() {
    let board = LockBoardSim::new(LockBoardConfig::default()).unwrap();
    let (mut client, served) = tokio::io::duplex(1024);
    let task = board.serve_stream(served);

    // FC04 read input registers 0..2, transaction 0x1234, unit 1.
    client
        .write_all(&[0x12, 0x34, 0, 0, 0, 6, 1, 0x04, 0, 0, 0, 2])
        .await
        .unwrap();
    let mut answer = [0u8; 13];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        answer,
        [0x12, 0x34, 0, 0, 0, 7, 1, 0x04, 4, 0x01, 0x02, 0, 16]
    );

    // FC16 whose byte count disagrees with its quantity: exception, connection stays.
    client
        .write_all(&[0, 1, 0, 0, 0, 10, 1, 0x10, 0, 0, 0, 1, 3, 0, 100, 0])
        .await
        .unwrap();
    let mut answer = [0u8; 9];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, [0, 1, 0, 0, 0, 3, 1, 0x90, 0x03]);

    // FC05 coil 2 ON.
    client
        .write_all(&[0, 2, 0, 0, 0, 6, 1, 0x05, 0, 2, 0xFF, 0])
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer, [0, 2, 0, 0, 0, 6, 1, 0x05, 0, 2, 0xFF, 0]);
    assert_eq!(board.pulse_count(2).unwrap(), 1);

    // Not Modbus (protocol id 1): the stream is closed.
    client
        .write_all(&[0, 3, 0, 1, 0, 6, 1, 0x04, 0, 0, 0, 1])
        .await
        .unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    task.await.unwrap();
}
