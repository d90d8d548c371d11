/// A value that may be carried across threads but used only on its loop's thread, checked at every access.
public struct LoopBound<Value>: @unchecked Sendable {
    private let _value: Value
    public let loop: EventLoop

    /// Wraps `value`; call on the loop thread.
    public init(_ value: Value, loop: EventLoop) {
        loop.preconditionInEventLoop()
        self._value = value
        self.loop = loop
    }

    /// The wrapped value; traps off the loop thread.
    public var value: Value {
        loop.preconditionInEventLoop()
        return _value
    }
}
