"""DMTF spdm-emu socket "platform" protocol (spdm-emu spdm_emu_common/command.h).

  frame.py      the frame codec (sans-IO): header, commands, transport types, decoder
  mctp.py       MCTP message-type framing of the MCTP transport's payloads
  responder.py  sans-IO responder side: frames in, reply frames and connection actions out
  server.py     asyncio TCP server (`vdev spdm-emu`) around a `vdev.endpoint.tee_device.TeeDevice`
  client.py     blocking client: a transport for our SPDM requester / TSM model
"""
