from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KIND_UNSPECIFIED: _ClassVar[Kind]
    COMMENT: _ClassVar[Kind]
    COMMENT_UPDATED: _ClassVar[Kind]
    COMMENT_DELETED: _ClassVar[Kind]
    REACTIONS: _ClassVar[Kind]
    COMMENT_PINNED: _ClassVar[Kind]
    COMMENT_UNPINNED: _ClassVar[Kind]
KIND_UNSPECIFIED: Kind
COMMENT: Kind
COMMENT_UPDATED: Kind
COMMENT_DELETED: Kind
REACTIONS: Kind
COMMENT_PINNED: Kind
COMMENT_UNPINNED: Kind

class Event(_message.Message):
    __slots__ = ("comment_id", "video_id", "seq", "epoch", "kind", "frame", "created_at_ms", "target_seq", "request_id")
    COMMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VIDEO_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TARGET_SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    comment_id: int
    video_id: str
    seq: int
    epoch: int
    kind: Kind
    frame: bytes
    created_at_ms: int
    target_seq: int
    request_id: str
    def __init__(self, comment_id: _Optional[int] = ..., video_id: _Optional[str] = ..., seq: _Optional[int] = ..., epoch: _Optional[int] = ..., kind: _Optional[_Union[Kind, str]] = ..., frame: _Optional[bytes] = ..., created_at_ms: _Optional[int] = ..., target_seq: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class DispatchRequest(_message.Message):
    __slots__ = ("events", "id")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    id: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., id: _Optional[int] = ...) -> None: ...

class DispatchReply(_message.Message):
    __slots__ = ("nodes", "delivered", "dropped", "id", "undelivered")
    NODES_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    UNDELIVERED_FIELD_NUMBER: _ClassVar[int]
    nodes: int
    delivered: int
    dropped: int
    id: int
    undelivered: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, nodes: _Optional[int] = ..., delivered: _Optional[int] = ..., dropped: _Optional[int] = ..., id: _Optional[int] = ..., undelivered: _Optional[_Iterable[int]] = ...) -> None: ...

class RoutesRequest(_message.Message):
    __slots__ = ("video_ids",)
    VIDEO_IDS_FIELD_NUMBER: _ClassVar[int]
    video_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, video_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class NodeList(_message.Message):
    __slots__ = ("node_ids",)
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RoutesReply(_message.Message):
    __slots__ = ("videos", "live_nodes")
    class VideosEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: NodeList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[NodeList, _Mapping]] = ...) -> None: ...
    VIDEOS_FIELD_NUMBER: _ClassVar[int]
    LIVE_NODES_FIELD_NUMBER: _ClassVar[int]
    videos: _containers.MessageMap[str, NodeList]
    live_nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, videos: _Optional[_Mapping[str, NodeList]] = ..., live_nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class DeliverRequest(_message.Message):
    __slots__ = ("events", "id")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    id: int
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., id: _Optional[int] = ...) -> None: ...

class DeliverReply(_message.Message):
    __slots__ = ("accepted", "duplicates", "unhosted", "id")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    UNHOSTED_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    duplicates: int
    unhosted: int
    id: int
    def __init__(self, accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., unhosted: _Optional[int] = ..., id: _Optional[int] = ...) -> None: ...
