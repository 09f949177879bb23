//! Raw MBAP bytes against `serve_stream` and against the in-memory link
//! (`ModbusServer::connect_memory`): exact answers, malformed PDUs, broken framing.
#![allow(clippy::unwrap_used)]

use locker_sim::{LockBoardConfig, LockBoardSim};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[tokio::test]
async fn raw_frames_over_a_duplex_stream() {
    let board = LockBoardSim::new(LockBoardConfig::default()).unwrap();
    let (client, served) = tokio::io::duplex(1024);
    let task = board.serve_stream(served);
    raw_frames(&board, client).await;
    task.await.unwrap();
}

#[tokio::test]
async fn raw_frames_over_the_in_memory_link() {
    let board = LockBoardSim::new(LockBoardConfig::default()).unwrap();
    let client = board.modbus_server().connect_memory();
    raw_frames(&board, client).await;
}

#[tokio::test]
async fn in_memory_link_answers_pipelined_and_split_frames_in_order() {
    let board = LockBoardSim::new(LockBoardConfig::default()).unwrap();
    let mut client = board.modbus_server().connect_memory();
    // Two requests in one write, the second one split across two writes.
    let first = [0, 7, 0, 0, 0, 6, 1, 0x04, 0, 1, 0, 1];
    let second = [0, 8, 0, 0, 0, 6, 1, 0x02, 0, 0, 0, 16];
    let mut bytes = first.to_vec();
    bytes.extend_from_slice(&second[..5]);
    client.write_all(&bytes).await.unwrap();
    client.write_all(&second[5..]).await.unwrap();
    let mut answer = [0u8; 11 + 11];
    client.read_exact(&mut answer).await.unwrap();
    assert_eq!(
        answer,
        [
            0, 7, 0, 0, 0, 5, 1, 0x04, 2, 0, 16, // lock count 16
            0, 8, 0, 0, 0, 5, 1, 0x02, 2, 0, 0 // 16 doors closed
        ]
    );
}

async fn raw_frames(board: &LockBoardSim, mut client: impl AsyncRead + AsyncWrite + Unpin) {
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
}
